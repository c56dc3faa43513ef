"""Bird boxes from a detection head on the classifier's own backbone: the head, its file, its data,
its training and evaluation, and the localisers the pipeline uses."""
