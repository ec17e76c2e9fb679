// Package atomicfile writes files so that a crash at any instant leaves
// either the old content or the new, never a torn file, and the rename
// itself survives a power loss (the directory is fsynced).
//
//	err := atomicfile.Write(path, data)           // mode 0600
//	err := atomicfile.WriteKeepingPrevious(path, data) // path.prev holds the old content
//
// Temporary files are named TempPrefix*; RemoveTemps deletes those a crash
// left behind.
package atomicfile
