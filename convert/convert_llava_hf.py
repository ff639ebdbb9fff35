"""Convert a llava-hf checkpoint (llava-hf/llava-1.5-7b-hf) into a Hub-ready AdaLlava repo.

The same as `ada-hf convert SOURCE OUTPUT --from llava-hf`; see `python convert/convert_llava_hf.py --help`.
"""

import sys

from ada_hf.cli import convert_script_main

if __name__ == "__main__":
    sys.exit(convert_script_main("llava-hf", __doc__))
