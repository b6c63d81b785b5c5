from .cli import main

main(prog_name="p2pctl")  # the same name (usage lines, completion variable) as the installed script
