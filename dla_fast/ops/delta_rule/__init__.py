"""The gated delta-rule backbone: ``S' = exp(g) (S - beta k k^T S) + beta k v^T`` (the open slot gets the write).

``recurrent``: the per-token forward (over the shared torch recurrence) and its explicit backward.
"""
