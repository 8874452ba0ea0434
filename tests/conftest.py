import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo is flat: scripts import each other as top-level modules
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
