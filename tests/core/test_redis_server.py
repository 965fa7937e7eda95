import redis

from faas_llm.redis_server import RedisServer, find_redis_server, redis_server_version


def test_session_redis_is_real_and_clean(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    info = redis_client.info("server")
    major, minor = (int(x) for x in str(info["redis_version"]).split(".")[:2])
    assert (major, minor) >= (6, 2)
    redis_client.xadd("s", {"a": "1"})
    redis_client.xgroup_create("s", "g", id="0")
    assert redis_client.xreadgroup("g", "c", {"s": ">"}, count=1)


def test_binary_is_new_enough() -> None:
    assert redis_server_version(find_redis_server())[:2] >= (6, 2)


def test_aof_server_keeps_data_across_restart(tmp_path) -> None:
    server = RedisServer(data_dir=tmp_path, appendonly=True).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        server.stop(kill=False)
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        client.close()
    finally:
        server.cleanup()
