"""Reader of CUHK03-NP's layout: Market-1501's layout in two subsets of the same people and
images, detected/ (boxes from a DPM detector) and labeled/ (boxes drawn by hand), with names
such as 0001_c1_1.png (identity, camera 1 or 2 of its camera pair, image number).

Reference:
  Zhong et al., Re-ranking Person Re-identification with k-reciprocal Encoding, CVPR 2017.
"""

import dataclasses

from siamese_reid.data.readers import MARKET_FOLDERS, existing_folder, read_market_dataset, require_root_only
from siamese_reid.errors import ReIDError

CUHK03_SUBSETS = ("detected", "labeled")


def find_cuhk03_subset(root, subset):
    """The folder of CUHK03-NP's `subset` ("detected" or "labeled"): root/<subset>/, or root
    itself when it holds Market-1501's folders and is not named after the other subset."""
    root = existing_folder(root)
    subsets = {child.name.lower(): child for child in root.iterdir() if child.name.lower() in CUHK03_SUBSETS}
    if subset in subsets and subsets[subset].is_dir():
        return subsets[subset].resolve()
    other = next(name for name in CUHK03_SUBSETS if name != subset)
    if any((root / folder).is_dir() for folder in MARKET_FOLDERS):
        if root.name.lower() == other:
            raise ReIDError(
                f"data.root '{root}' is CUHK03-NP's {other} subset but data.cuhk03_subset is {subset}: "
                f"set data.cuhk03_subset={other}, or point data.root at the cuhk03-np folder"
            )
        return root.resolve()
    hint = f" (it has {other}/: set data.cuhk03_subset={other})" if other in subsets else ""
    raise ReIDError(
        f"data.root '{root}' holds neither {subset}/ nor {', '.join(MARKET_FOLDERS)}{hint}: point it at "
        f"cuhk03-np/ (holding detected/ and labeled/) or at cuhk03-np/{subset}/"
    )


def read_cuhk03_np(data, need_train):
    """Layout cuhk03_np: the data.cuhk03_subset subset, read as Market-1501 (cameras 1 and 2)."""
    require_root_only(data, "cuhk03_np")
    folder = find_cuhk03_subset(data.root, data.cuhk03_subset)
    return read_market_dataset(dataclasses.replace(data, root=str(folder)), need_train)
