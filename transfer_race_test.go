//go:build race

package main

// raceDetector: the race detector is on; tests too slow under it skip.
const raceDetector = true
