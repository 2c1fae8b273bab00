"""Staging and test doubles, next to the product and outside it: the fake Replicate API
(`staging.fake_replicate`) and the test server thread (`staging.serving`).

Shipped in the wheel, but what only they need (python-multipart) comes with the `staging` extra:
pip install 'video-generator[staging]'. They may import clipgen; nothing in the product imports them.
"""
