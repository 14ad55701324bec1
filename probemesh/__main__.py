"""python -m probemesh"""

from probemesh.cli import main

main()
