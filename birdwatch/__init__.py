"""birdwatch: finds birds on feeder cameras, names the species with a birder model, tells the house over MQTT."""

import logging

__version__ = "0.1.0"

# birder imports torch's C++-extension loader, which warns on every start of a CPU-only machine
# that no CUDA runtime is present. That is the normal case for a feeder box, not news.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
