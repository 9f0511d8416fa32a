"""flow.text_table.format_table against tables written out by hand."""
from flow.text_table import format_table


def test_left_and_right_aligned_columns_with_rules():
    got = format_table(["name", "n"], [["ab", "7"], ["c", "123"]], right={1})
    assert got == ("name    n\n"
                   "----  ---\n"
                   "ab      7\n"
                   "c     123")


def test_footer_follows_a_second_rule_and_sets_widths():
    got = format_table(["a", "b"], [["x", "1"]], right={1}, footer=[["TOTAL", "10"]])
    assert got == ("a       b\n"
                   "-----  --\n"
                   "x       1\n"
                   "-----  --\n"
                   "TOTAL  10")


def test_no_rows_is_the_header_and_its_rule():
    assert format_table(["col", "x"], []) == "col  x\n---  -"
