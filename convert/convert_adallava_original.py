"""Convert an original AdaLLaVA checkpoint (zhuoyanxu/ada-llava-L-v1.5-7b and friends) plus its CLIP tower into a Hub-ready AdaLlava repo.

The same as `ada-hf convert SOURCE OUTPUT --from adallava-original`; see `python convert/convert_adallava_original.py --help`.
"""

import sys

from ada_hf.cli import convert_script_main

if __name__ == "__main__":
    sys.exit(convert_script_main("adallava-original", __doc__))
