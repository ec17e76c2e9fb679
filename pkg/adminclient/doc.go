// Package adminclient connects to the server's admin socket. The CLI and dev
// mode use it, so both go through the same API, peer-uid check included.
package adminclient
