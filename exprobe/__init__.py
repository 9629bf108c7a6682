"""exprobe: will each Exchange scenario work through this network path, and which hop breaks it?"""

__version__ = "0.1.0"
