"""birdwatch: finds birds on feeder cameras, names the species with a birder model, tells the house over MQTT."""

import logging
import os

__version__ = "0.1.0"

# birder imports torch's C++-extension loader, which warns on every start of a CPU-only machine
# that no CUDA runtime is present. That is the normal case for a feeder box, not news.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

# OpenCV and FFmpeg print straight to stderr, bypassing logging, and can echo stream addresses.
# birdwatch logs its own one-line reason for every failed open or read; set these variables
# (e.g. OPENCV_FFMPEG_LOGLEVEL=32) before starting to see the libraries' own messages.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
