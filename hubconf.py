"""torch.hub entry points for natv2 exports.

    net = torch.hub.load("/path/to/natv2", "natnet", source="local", path="results/cifar10/nets/007")

``path`` is an exported network (or ensemble) directory written by natv2 (see natv2/export.py).
Nothing is downloaded: the weights are read from ``path``.
"""
dependencies = ["torch"]


def natnet(path, **kwargs):
    """An exported natv2 network or ensemble directory as an eval-mode ``nn.Module``."""
    if kwargs:
        raise TypeError(f"natnet: unexpected arguments {', '.join(sorted(kwargs))} (only path=...)")
    from natv2.export import load_network

    return load_network(path)
