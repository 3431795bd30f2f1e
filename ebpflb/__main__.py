import sys

try:
    from ebpflb.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing: nothing was touched yet
    sys.exit(130)

main()
