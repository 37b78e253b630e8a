"""The studies: experiments run on top of the recipes, the evaluation and the data, each with its
library code (the console commands that start them are in ``openclip_unimlip.commands``).

- `statistics`: intervals over training seeds (t-intervals) and the paired bootstrap.
"""
