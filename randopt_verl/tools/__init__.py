"""User tools over a run directory: the `randopt-verl` command line (cli), compare, export, consolidate and the demo.
They read what the trainers wrote; none of them is on the training path."""
