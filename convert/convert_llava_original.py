"""Convert an original LLaVA-1.5 checkpoint (liuhaotian/llava-v1.5-7b, .bin shards) plus its CLIP tower into a Hub-ready AdaLlava repo.

The same as `ada-hf convert SOURCE OUTPUT --from llava-original`; see `python convert/convert_llava_original.py --help`.
"""

import sys

from ada_hf.cli import convert_script_main

if __name__ == "__main__":
    sys.exit(convert_script_main("llava-original", __doc__))
