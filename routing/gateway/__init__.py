"""The gateway: the providers' own APIs relayed with a swapped credential, metered from what they report."""
