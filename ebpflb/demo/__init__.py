"""`python -m ebpflb.demo` (`make demo`): the whole tool shown in a network namespace of its own."""
