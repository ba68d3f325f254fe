"""Stand-in for Slicer's ``SampleData`` module (Testing only): registrations are recorded."""
registered = []


class SampleDataLogic:
    @staticmethod
    def registerCustomSampleDataSource(**kwargs) -> None:
        registered.append(kwargs)
