"""PyTorch networks with arcface_torch's module names, layer order and BatchNorm epsilon, for the converter tests.

Written from the facts of insightface's recognition/arcface_torch/backbones/iresnet.py and mobilefacenet.py
(state dict names, which op follows which, eps 1e-5, the features BatchNorm1d, the flatten of a 7x7x512 map),
so that their state dicts and ONNX exports look like the released `backbone.pth` / model zoo files.
`randomize` gives every BatchNorm, PReLU and weight non-trivial values and running statistics.
"""
import torch
from torch import nn

EPS = 1e-5


class IRBlock(nn.Module):
    """BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, plus the (downsampled) input."""

    def __init__(self, in_channels, channels, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=EPS)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels, eps=EPS))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, depths, num_features=512, relu=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=EPS)
        self.prelu = nn.ReLU() if relu else nn.PReLU(64)  # relu=True: a network with an op the converter refuses
        in_channels = 64
        for index, (channels, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
            blocks = [IRBlock(in_channels, channels, 2)] + [IRBlock(channels, channels, 1) for _ in range(depth - 1)]
            setattr(self, "layer{}".format(index), nn.Sequential(*blocks))
            in_channels = channels
        self.bn2 = nn.BatchNorm2d(512, eps=EPS)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class ConvBlock(nn.Module):
    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1, linear=False):
        super().__init__()
        layers = [nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(out_c)]
        self.layers = nn.Sequential(*(layers if linear else layers + [nn.PReLU(out_c)]))

    def forward(self, x):
        return self.layers(x)


class DepthWise(nn.Module):
    def __init__(self, in_c, out_c, residual, stride, groups):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups), ConvBlock(groups, groups, 3, stride, 1, groups=groups), ConvBlock(groups, out_c, linear=True)
        )

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


class Residual(nn.Module):
    def __init__(self, channels, num_block, groups):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(channels, channels, True, 1, groups) for _ in range(num_block)])

    def forward(self, x):
        return self.layers(x)


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class GDC(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(512, 512, 7, groups=512, linear=True), Flatten(), nn.Linear(512, num_features, bias=False), nn.BatchNorm1d(num_features)
        )

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """arcface_torch's get_mbf (scale 2, blocks (1, 4, 6, 2)) / get_mbf_large (scale 4, blocks (2, 8, 12, 4))."""

    def __init__(self, num_features=512, blocks=(1, 4, 6, 2), scale=2):
        super().__init__()
        width = 64 * scale
        self.layers = nn.ModuleList([ConvBlock(3, width, 3, 2, 1)])
        if blocks[0] == 1:
            self.layers.append(ConvBlock(width, width, 3, 1, 1, groups=64))
        else:
            self.layers.append(Residual(width, blocks[0], 128))
        self.layers.extend([
            DepthWise(width, width, False, 2, 128), Residual(width, blocks[1], 128),
            DepthWise(width, 2 * width, False, 2, 256), Residual(2 * width, blocks[2], 256),
            DepthWise(2 * width, 2 * width, False, 2, 512), Residual(2 * width, blocks[3], 256),
        ])
        self.conv_sep = ConvBlock(2 * width, 512)
        self.features = GDC(num_features)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


class Normalized(nn.Module):
    """An mxnet-era graph: the model takes raw pixels and normalizes them itself with Sub and Mul nodes."""

    def __init__(self, model, mean=127.5, scale=0.0078125):
        super().__init__()
        self.model, self.mean, self.scale = model, mean, scale

    def forward(self, x):
        return self.model((x - self.mean) * self.scale)


def randomize(model, seed=0, input_size=112, passes=2, batch_size=8):
    """Random affine BatchNorm / PReLU values, then running statistics from train-mode passes; returns model.eval()."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
                module.momentum = None  # cumulative average of the passes below
            elif isinstance(module, nn.PReLU):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.5)
        model.train()
        for _ in range(passes):
            model(torch.randn(batch_size, 3, input_size, input_size, generator=generator))
    return model.eval()
