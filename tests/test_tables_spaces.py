"""NAS-Bench-201 and FBNet spaces: keys in the benchmarks' own formats, on hand-written rows."""
import pytest

from fleetnas.supernets import InvalidConfig, get_supernet
from fleetnas.supernets.nb201 import live_edges, path_features

NB201_KEY = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
FBNET_KEY = "7 8 1 8 4 8 8 8 7 4 1 4 7 3 2 7 3 2 4 2 4 5"


def test_nb201_key_round_trip():
    space = get_supernet("nb201").space
    config = space.from_key(NB201_KEY)
    assert config["edge_1_0"] == "avg_pool_3x3" and config["edge_2_1"] == "skip_connect"
    assert config["edge_3_0"] == "nor_conv_1x1"
    assert space.key(config) == NB201_KEY
    assert space.size == 5 ** 6


def test_nb201_every_sampled_config_round_trips():
    space = get_supernet("nb201").space
    for config in space.sample(50, rng=1):
        assert space.from_key(space.key(config)) == config


@pytest.mark.parametrize("bad", [
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|",                       # two groups
    "|conv_5x5~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|none~1|none~2|",    # unknown op
    "|none~1|+|nor_conv_1x1~0|skip_connect~1|+|none~0|none~1|none~2|",        # wrong source node
    "avg_pool_3x3~0+nor_conv_1x1~0|skip_connect~1+none~0|none~1|none~2",      # no bars
])
def test_nb201_bad_keys_name_the_problem(bad):
    with pytest.raises(InvalidConfig):
        get_supernet("nb201").space.from_key(bad)


def test_nb201_live_edges_follow_constant_folding():
    space = get_supernet("nb201").space
    # Node 3 takes only `none` edges: the network's output is constant, nothing runs.
    dead = space.from_key("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|")
    assert live_edges(dead) == []
    assert get_supernet("nb201").analytic_features(dead)["constant_output"] == 1.0
    # Node 1 is constant (its only input edge is `none`): the edges leaving it fold away.
    config = space.from_key("|none~0|+|skip_connect~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_3x3~1|none~2|")
    # `none` edges leaving a live node stay (a multiplication by zero); edges leaving node 1 do not.
    assert live_edges(config) == [(1, 0), (2, 0), (3, 0), (3, 2)]
    features = get_supernet("nb201").analytic_features(config)
    assert features["live_nor_conv_3x3"] == 0 and features["live_nor_conv_1x1"] == 1 and features["live_none"] == 2


@pytest.mark.parametrize("key, open_paths, conv_free, depths", [
    # Every path open: 3<-0 skip (no conv), 0-1-3 two convs, 0-2-3 one, 0-1-2-3 two.
    ("|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|", 4, 1, (0, 2)),
    # A pool is no convolution; paths through a `none` edge are closed and not counted.
    ("|avg_pool_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|skip_connect~1|none~2|", 2, 2, (0, 0)),
    ("|nor_conv_1x1~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_1x1~1|nor_conv_3x3~2|", 2, 0, (2, 3)),
])
def test_nb201_path_features_count_the_open_paths_without_a_convolution(key, open_paths, conv_free, depths):
    features = path_features(get_supernet("nb201").space.from_key(key))
    assert features["open_paths"] == open_paths and features["conv_free_paths"] == conv_free
    assert (features["min_conv_depth"], features["max_conv_depth"]) == depths


def test_nb201_macs_grow_with_convolutions():
    nb201 = get_supernet("nb201")
    one = nb201.space.from_key("|nor_conv_1x1~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|")
    three = nb201.space.from_key("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|")
    # Five cells in each of three stages; a 1x1 conv costs H*W*C*C = 262,144 MACs in every stage.
    assert nb201.analytic_features(three)["macs"] - nb201.analytic_features(one)["macs"] == 15 * 8 * 262_144


def test_fbnet_key_round_trip_and_names():
    space = get_supernet("fbnet").space
    config = space.from_key(FBNET_KEY)
    assert [config[n] for n in space.names[:4]] == ["k5_e6", "skip", "k3_e1_g2", "skip"]
    assert config["layer_21"] == "k5_e1_g2"
    assert space.key(config) == FBNET_KEY
    assert space.n_var == 22 and space.size == pytest.approx(9.0 ** 22)


@pytest.mark.parametrize("bad", ["7 8 1", FBNET_KEY + " 3", FBNET_KEY.replace("7", "9", 1), "a " * 22])
def test_fbnet_bad_keys_name_the_problem(bad):
    with pytest.raises(InvalidConfig, match="op_idx_list"):
        get_supernet("fbnet").space.from_key(bad)


def test_fbnet_analytic_features_order_blocks_by_cost():
    fbnet = get_supernet("fbnet")
    light = fbnet.space.from_key(" ".join(["8"] * 22))   # every layer a skip
    heavy = fbnet.space.from_key(" ".join(["7"] * 22))   # every layer k5_e6
    a, b = fbnet.analytic_features(light), fbnet.analytic_features(heavy)
    assert b["macs"] > 5 * a["macs"] and b["params"] > a["params"]
    assert fbnet.table_only and get_supernet("nb201").table_only


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n3\n", "t.csv line 3 has 1 fields where the header has 2"),
    ("a,b\n1,2\n3,4,5\n", "t.csv line 3 has 3 fields where the header has 2"),
    ("a,b\n1,2\n\n3,nan\n", "t.csv line 4, column 'b': 'nan' is not a finite number"),
    ("a,b\n1,inf\n", "t.csv line 2, column 'b': 'inf' is not a finite number"),
    ("a,b\n1,\n", "t.csv line 2, column 'b': '' is not a finite number"),
])
def test_a_table_names_the_line_of_a_ragged_row_or_a_value_that_is_not_a_number(tmp_path, text, message):
    from fleetnas.tables import read_table

    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_table(path).column("b")
    with pytest.raises(ValueError, match=message):  # feature columns are read by the same rule
        read_table(path).features(["a", "b"])


@pytest.mark.parametrize("data, message", [
    (b"a,b\n1,\xe9\n", r"t.csv is not UTF-8 text: line 2 holds byte 0xe9"),
    (b"a,b\n" + b"1,2\n" * 9000 + b"3,\xe9\n", r"t.csv is not UTF-8 text: line 9002 holds byte 0xe9"),  # past a buffer
    (b"a,b\n1,\"" + b"x" * 200_000 + b"\"\n", r"t.csv line \d+ is not CSV that can be read: field larger"),
])
def test_a_table_that_is_not_utf8_csv_is_named(tmp_path, data, message):
    from fleetnas.tables import read_table

    path = tmp_path / "t.csv"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_table(path)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    from fleetnas.tables import read_table

    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfcellstr,acc\nx,1\n")
    assert read_table(path).columns[0] == "cellstr"


def test_a_column_named_twice_is_refused_and_one_named_with_a_plus_is_itself(tmp_path):
    from fleetnas.tables import read_table

    twice = tmp_path / "twice.csv"
    twice.write_text("cellstr,latency,latency\nx,1,2\n")
    with pytest.raises(ValueError, match=r"twice.csv line 1 names column 'latency' twice \(fields 2 and 3\)"):
        read_table(twice)
    plus = tmp_path / "plus.csv"
    plus.write_text("enc,dec,enc+dec\n1,2,10\n")
    assert read_table(plus).column("enc+dec").tolist() == [10.0]  # the column, not enc + dec
    plus.write_text("enc,dec\n1e308,1e308\n")
    with pytest.raises(ValueError, match=r"plus.csv line 2: the sum 'enc\+dec' is beyond a float"):
        read_table(plus).column("enc+dec")


def test_a_key_the_space_cannot_read_is_named_with_its_file_and_line(tmp_path):
    from fleetnas.tables import read_table, table_configs

    good = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|"
    path = tmp_path / "keys.csv"
    path.write_text(f"cellstr,acc\n{good},1\n\ngarbage,2\n")
    with pytest.raises(ValueError, match=r"keys.csv line 4, column 'cellstr': 'garbage' is not an nb201 cellstr"):
        table_configs(read_table(path), get_supernet("nb201"), "cellstr")


def test_bench_leaves_no_json_when_it_fails_and_refuses_repeats_and_small_sizes_up_front(tmp_path, capsys):
    from fleetnas.cli import main

    good = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|"
    table = tmp_path / "t.csv"
    table.write_text(f"cellstr,a,b\n{good},1,2\ngarbage,2,3\n")
    out = tmp_path / "results" / "r.json"
    common = ["--table", str(table), "--space", "nb201", "--key", "cellstr", "--json", str(out)]
    assert main(["bench", "predictor", *common, "--target", "a", "--train-size", "10"]) == 1
    assert main(["bench", "search", *common, "--objective", "a:max", "--objective", "b:min", "--tactic", "random",
                 "--budget", "1"]) == 1
    assert "line 3, column 'cellstr'" in capsys.readouterr().err
    assert not out.exists()
    for args, message in ((["--target", "a", "--target", "a", "--train-size", "10"], "--target a is given twice"),
                          (["--target", "a", "--train-size", "10", "--train-size", "10"], "--train-size 10 is given"),
                          (["--target", "a", "--train-size", "30", "--train-size", "3"], "--train-size 3 is too small")):
        assert main(["bench", "predictor", *common, *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["bench", "search", *common, "--objective", "a:max", "--objective", "b:min", "--tactic", "random",
                 "--budget", "1", "--known", "a:1", "--known", "a:2"]) == 1
    assert "--known a is given twice" in capsys.readouterr().err


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-m", "fleetnas.cli", "space", "sample", "nb201", "--n", "20000"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout.readline().startswith(b'{"config"')
        process.stdout.close()  # as `| head -1` does
        stderr = process.stderr.read()
    assert process.returncode == 141 and b"Traceback" not in stderr


def test_a_front_wider_than_a_float_is_refused_not_scored(tmp_path, capsys):
    from fleetnas.cli import main

    cells = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|",
             "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|"]
    table = tmp_path / "huge.csv"
    table.write_text(f"cellstr,a,b\n{cells[0]},1e308,10\n{cells[1]},-1e308,0\n")
    assert main(["bench", "search", "--table", str(table), "--space", "nb201", "--key", "cellstr", "--objective",
                 "a:max", "--objective", "b:min", "--tactic", "random", "--budget", "1"]) == 1
    assert "huge.csv: the values of a on the true front span more than a float holds" in capsys.readouterr().err
