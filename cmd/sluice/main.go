// Command sluice is the Sluice MQTT broker with durable work queues, device simulator and load tester.
package main

import (
	"fmt"
	"os"
)

var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("sluice", version)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: sluice <serve|version|passwd> [flags]")
	os.Exit(2)
}
