import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # a plain clone: the package iqa_vlm/ and the entry scripts, without pip install
