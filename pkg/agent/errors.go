package agent

import "errors"

// ErrNoIdentity means the data dir holds no valid agent SVID and no join
// token was given, so the agent cannot authenticate.
var ErrNoIdentity = errors.New("agent: join_token is required: the data dir holds no valid agent SVID")
