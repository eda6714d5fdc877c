"""What the benchmarks share: the one timer and result format (timing), torch's recipe to compare with
(torch_recipe), and a two-node dataflow runner (two_nodes). An entry point runs with benchmarks/ first on
sys.path, so `from lib.timing import ...` finds it."""
