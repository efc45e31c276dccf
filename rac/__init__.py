"""RAC on Ray: faithful clarifying-question generation (retrieve, then ask) at cluster scale."""

import logging

__version__ = "0.1.0"

logging.getLogger("rac").addHandler(logging.NullHandler())
