import fnmatch

from faas_llm.keys import Keys


def test_every_key_has_the_prefix_and_matches_the_pattern() -> None:
    keys = Keys("pfx")
    built = [
        keys.auth("u"), keys.namespaces(), keys.namespace_subjects("ns"), keys.namespace_limits("ns"),
        keys.action("ns", "a"),
        keys.actions_index("ns"), keys.activation("id"), keys.activation_pending("id"),
        keys.activation_done("id"), keys.activation_tokens("id"), keys.activation_claim("id"),
        keys.activations_index("ns"), keys.rate_window("ns", 5), keys.inflight("ns"),
        keys.action_queue("ns", "a"), keys.queues_index(), keys.consumer_group(), keys.node("n"),
        keys.nodes_index(), keys.node_cache("n"), keys.node_containers("n"), keys.model_status("m"),
        keys.model_popularity(), keys.migration("id"), keys.events(),
        keys.node_starts("n"), keys.action_starts("ns", "a"), keys.placement_lock("ns", "a"),
        keys.activation_running("id"), keys.node_running("n"), keys.model_popularity_window(5), keys.models_kept(),
        keys.celery_dead_nodes(), keys.celery_lock("x"), keys.node_drain("n"),
        keys.migration_plan("ns", "a"), keys.slot_lease("l"), keys.slot_grant("l"),
    ]
    assert len(set(built)) == len(built), "two different things share a key"
    for key in built:
        assert key.startswith("pfx:")
        assert fnmatch.fnmatchcase(key, keys.pattern())


def test_prefixes_isolate_deployments() -> None:
    assert Keys("a").action("ns", "x") != Keys("b").action("ns", "x")
    assert not fnmatch.fnmatchcase(Keys("a").action("ns", "x"), Keys("b").pattern())


def test_shapes() -> None:
    keys = Keys()
    assert keys.action("guest", "hello") == "faas:ns:guest:action:hello"
    assert keys.action_queue("guest", "hello") == "faas:q:guest:hello"
    assert keys.activation("0" * 32) == "faas:act:" + "0" * 32
    assert Keys.node_queue("n1") == "node.n1"
