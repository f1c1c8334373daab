"""Model families hosted on the shared harness (PTH-Net, LSTPNet, HTNet): one sub-package each."""
