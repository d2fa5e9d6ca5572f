"""update-lock: a balena block that holds balena's update locks when its policy says so.

Read ``shared`` platform facts in the README ("How balena update locks work") first.
"""

__version__ = "0.1.0"
