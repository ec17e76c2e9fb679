// Package config reads the server's and the agent's YAML files strictly (an
// unknown key is an error naming it), applies defaults and validates every
// value, naming the field at fault. It turns file-shaped structs into the
// typed configs of pkg/server and pkg/agent.
package config
