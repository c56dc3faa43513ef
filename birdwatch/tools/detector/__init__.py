"""Detector tools: train, evaluate and label (the teacher's labels for the head)."""

# Teacher boxes scoring below this are nothing; between it and teacher.score_threshold, uncertain. Here, not in
# label.py, so that the command line shows it without importing torch.
UNCERTAIN_FLOOR = 0.25
