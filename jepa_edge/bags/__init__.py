"""Robot recordings: read ROS bags and MCAP files, write runs to MCAP.

Nothing here imports an optional package at import time: ``rosbags`` (the ``robot`` extra) is
imported when a bag is opened.
"""

from jepa_edge.bags.pairing import BagError, pair_by_time
from jepa_edge.bags.reader import BagReader, decode_image, image_topics, is_bag, read_frames, view_names

__all__ = ["BagError", "BagReader", "decode_image", "image_topics", "is_bag", "pair_by_time", "read_frames",
           "view_names"]
