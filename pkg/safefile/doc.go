// Package safefile keeps shortleaf's files safe from crashes and from other
// users.
//
// Writes are atomic: a crash at any instant leaves the old content or the
// new, never a torn file, and the rename itself survives a power loss (the
// directory is fsynced):
//
//	err := safefile.Write(path, data)                // mode 0600
//	err := safefile.WriteKeepingPrevious(path, data) // path.prev holds the old content
//
// Temporary files are named TempPrefix*; RemoveTemps deletes those a crash
// left behind. CheckPrivateDir and CheckPrivateFile refuse a directory or a
// secret file that another user could control or read. LockDir holds a data
// dir for one process at a time and names the holder's PID to a second one.
package safefile
