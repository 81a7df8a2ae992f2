"""The command line: argument parsing, output and exit codes. Nothing else imports it."""
