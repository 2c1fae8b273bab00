"""The `video-generator` command: the top layer, above flows/ and deployments/.

It parses arguments and starts flows, deployments and servers; what a command is given is checked in the
core (clipgen.command_input) and what it prints is written there too (clipgen.progress_text). Nothing
below imports this package.
"""
