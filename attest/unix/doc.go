// Package unix is workload attestation by Unix peer credentials.
//
// The agent learns a caller's pid, uid and gid from SO_PEERCRED on the Workload
// API socket; this attestor turns them into selectors:
//
//	unix:uid:1000  unix:gid:1000  unix:user:alice  unix:group:staff
//	unix:path:/usr/bin/app  unix:sha256:<hex of the executable>
//
// The executable's hash is cached by (device, inode, size, mtime), so a busy
// workload costs one stat per call, not one read of its binary.
package unix
