"""Detector tools: train, evaluate and label (the teacher's labels for the head)."""
