"""``python -m appliance.jobs KIND --home HOME``: one job (see :mod:`appliance.jobs.child`)."""

from appliance.jobs.child import main

if __name__ == "__main__":
    main()
