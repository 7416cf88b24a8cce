"""One module per subcommand, each with ``add_parser(commands)`` and ``run(args) -> int``.

``cli.py`` only dispatches; a command reads its arguments, calls the modules that do
the work, and words the outcome: one line naming the setting for bad input, never a
traceback.
"""
