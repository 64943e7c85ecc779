// Command shoal is the one binary of Shoal: broker, frontend, workers,
// config check and (later) supervisor are its subcommands.
package main

import (
	"os"

	"github.com/shoal-dev/shoal/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
