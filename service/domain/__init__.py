"""Pure rules of the image service: no I/O, no drivers, standard library only."""
