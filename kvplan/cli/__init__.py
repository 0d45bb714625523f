"""The command line: one thin command per verb, options, renderers and output files."""
