"""Small word lists for the passphrase strength hint (:mod:`appliance.vault.strength`).

Kept short on purpose: the hint is advice, not a guarantee. The passwords are among the most
common in published leak statistics; the words are common English words that show up in
passwords (seasons, pets, sports, feelings, names of things).
"""

from __future__ import annotations


def _words(block: str) -> frozenset[str]:
    return frozenset(block.split())


COMMON_PASSWORDS = _words(
    """
    123456 123456789 12345678 12345 1234567 1234567890 111111 000000 123123 654321 666666
    121212 112233 123321 7777777 987654321 password password1 passw0rd p@ssw0rd qwerty
    qwerty123 qwertyuiop 1q2w3e4r 1qaz2wsx asdfgh asdfghjkl zxcvbnm abc123 abcd1234 iloveyou
    letmein welcome welcome1 admin admin123 administrator root toor login monkey dragon
    master sunshine princess football baseball shadow superman batman trustno1 whatever
    freedom secret secret123 hello hello123 charlie michael jennifer jordan hunter ranger
    buster soccer hockey killer george andrew thomas daniel computer internet starwars
    pokemon minecraft google changeme default guest test test123 testing access mustang
    matrix cheese summer winter spring autumn flower lovely loveme pass1234 azerty
    """
)

COMMON_WORDS = _words(
    """
    the and you that was for are with his they this have from one had word but not what all
    were when your can said there use each which she how their will other about out many then
    them these some her would make like him into time has look two more write see number way
    could people than first water been call who oil its now find long down day did get come
    made may part over new sound take only little work know place year live back give most
    very after thing our just name good sentence man think say great where help through much
    before line right too mean old any same tell boy follow came want show also around form
    three small set put end does another well large must big even such because turn here why
    ask went men read need land different home move try kind hand picture again change off
    play spell air away animal house point page letter mother answer found study still learn
    should world high every near add food between own below country plant last school father
    keep tree never start city earth eye light thought head under story saw left few while
    along might close something seem next hard open example begin life always those both paper
    together got group often run important until children side feet car mile night walk white
    sea began grow took river four carry state once book hear stop without second later miss
    idea enough eat face watch far indian really almost let above girl sometimes mountain cut
    young talk soon list song being leave family love summer winter spring autumn fall sun
    moon star sky rain snow wind fire dog cat horse bird fish tiger lion bear wolf eagle dragon
    monkey apple orange banana lemon cherry coffee tea sugar honey money gold silver red blue
    green black yellow purple happy sunny baby angel heart dream magic power secret master
    king queen prince princess knight football soccer baseball hockey golf tennis music dance
    party friend friends forever welcome hello freedom peace hope faith grace correct battery
    staple
    """
)

KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm", "1234567890", "azertyuiop", "qwertzuiop")
