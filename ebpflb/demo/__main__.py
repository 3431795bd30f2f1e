import sys

from ebpflb.demo.show import main

sys.exit(main())
