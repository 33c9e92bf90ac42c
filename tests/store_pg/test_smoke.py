from cgpop.store.postgres import PostgresStore


def test_domains(store: PostgresStore) -> None:
    store.add_domain("Example.com")
    assert store.list_domains() == ["example.com"]
