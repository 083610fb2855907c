"""One module per `gptspec` subcommand.

Each module defines `register(subparsers)`, which adds its sub-parser and sets
`func=handler` on it; `gptspec.cli` discovers the modules here automatically.
"""
