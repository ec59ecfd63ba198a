//go:build !race

package main

// raceDetector: the race detector is off.
const raceDetector = false
